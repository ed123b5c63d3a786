"""compress on the reproduction study's WRN-16-2 teacher, per runtime and budget (issue 27): see __main__."""
