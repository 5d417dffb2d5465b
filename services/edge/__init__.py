"""The HTTP edge: the raw ASGI app, the Open Inference Protocol v2 codec, admin routes and the BentoML adjustments the gateway runs with."""
