"""thumbsae.activations"""
