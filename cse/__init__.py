"""A lightweight oneM2M Common Services Entity: resource tree, storage and bindings."""
