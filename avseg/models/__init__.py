"""avseg.models"""
