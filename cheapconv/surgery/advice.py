"""What to try when a policy changes nothing: advice drawn from the model's own convs.

Depthwise networks (MobileNet, EfficientNet) have no dense k×k conv outside the stem, and vision transformers
have one conv, the patch embedding, which is the stem; default rules leave stems alone (as the paper does),
so ``G(4)`` finds nothing there. The advice names the layers and block families that do apply to *this*
model, so the user's next command works.
"""

from __future__ import annotations

from ..fx.analysis import Analysis

__all__ = ["nothing_replaced_advice"]


def _dense_kxk(conv) -> bool:
    return conv.groups == 1 and min(conv.kernel_size) > 1


def nothing_replaced_advice(analysis: Analysis) -> str:
    """One paragraph: which convs exist, why the usual blocks skip them, and policies that would apply."""
    convs = [s for s in analysis.convs if s.calls > 0]
    if not convs:
        return "The model has no nn.Conv2d that runs in forward, so there is nothing for a cheap block to replace."
    stems = [s for s in convs if s.is_stem]
    dense = [s for s in convs if _dense_kxk(s.conv) and not s.is_stem]
    depthwise = [s for s in convs if s.conv.groups > 1 and s.conv.groups == s.conv.in_channels]
    pointwise = [s for s in convs if max(s.conv.kernel_size) == 1 and s.conv.groups == 1]
    parts = []
    if stems and not dense:
        stem = stems[0]
        what = "Its only dense k×k conv is the stem" if _dense_kxk(stem.conv) else \
            "It has no dense k×k conv outside its stem"
        parts.append(f"{what} {stem.name} ({stem.describe()}), which default rules leave alone; name it to change "
                     f"it, e.g. '{stem.name}=G(N)'.")
    if depthwise:
        parts.append(f"{len(depthwise)} of its {len(convs)} convs are depthwise (already grouped), which the "
                     "grouped and bottleneck blocks do not replace.")
    if pointwise:
        params = sum(s.conv.weight.numel() for s in convs)
        share = 100 * sum(s.conv.weight.numel() for s in pointwise) / max(params, 1)
        example = pointwise[len(pointwise) // 2]
        parts.append(f"Its {len(pointwise)} 1×1 convs hold {share:.0f}% of the conv parameters: the structured "
                     "pointwise blocks replace those; 'LRp(0.25)' keeps a quarter of each layer's parameters "
                     f"(or name one layer, e.g. '{example.name}=LRp(0.25)'); 'ACDC(2)' keeps the fewest "
                     "parameters but computes its DCTs as dense products, so it costs more MACs.")
    if not parts:
        names = ", ".join(s.name for s in convs[:4])
        parts.append(f"Its convs (e.g. {names}) do not take this block; run with --dry-run to see each reason.")
    return " ".join(parts)
