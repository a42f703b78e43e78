"""metadino.eval"""
