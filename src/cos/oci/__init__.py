"""Container images: references, pulling into a local layout, unpacking to a tree."""
