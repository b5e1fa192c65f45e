"""thumbsae.report"""
