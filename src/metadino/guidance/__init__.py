"""metadino.guidance"""
