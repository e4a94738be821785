"""avseg.evaluation"""
