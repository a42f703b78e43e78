"""metadino.train"""
