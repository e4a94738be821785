"""avseg.inference"""
