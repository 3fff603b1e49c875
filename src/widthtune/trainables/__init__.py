"""One module per method, each registering itself; importing the package registers every built-in method."""

# each import registers one method; the order is the order `widthtune methods` lists them in
from widthtune.trainables import (  # noqa: F401, I001
    uniform,
    random,
    direct,
    given,
    lwdna,
    slimming,
    l1_filter,
    control,
    autoslim,
    cafenet,
    dmcp,
    morphnet,
    pas,
)
