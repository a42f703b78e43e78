"""Shipped configs (package data): the demo arms, which `metadino demo` loads and configs/demo*.yaml link to."""
