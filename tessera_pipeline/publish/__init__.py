"""Publishing a year: zone mosaics, STAC."""
