"""napari dock widgets: layers in, a ``methods.*`` call in a worker thread, layers out."""
