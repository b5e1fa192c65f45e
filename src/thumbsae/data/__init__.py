"""thumbsae.data"""
