"""avseg.data"""
