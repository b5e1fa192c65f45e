"""thumbsae.analysis"""
