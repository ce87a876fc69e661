"""One module per service; each endpoint is defined once and runs sync or async."""
