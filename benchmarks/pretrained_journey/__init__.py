"""A pretrained network and the user's own images, end to end from the command line (issue 24): see __main__."""
