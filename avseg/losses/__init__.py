"""avseg.losses"""
