"""thumbsae.video"""
