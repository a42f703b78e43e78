"""metadino.data"""
