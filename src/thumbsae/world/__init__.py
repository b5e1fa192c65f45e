"""thumbsae.world"""
