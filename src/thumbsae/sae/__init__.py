"""thumbsae.sae"""
