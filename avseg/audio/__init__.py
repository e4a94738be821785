"""avseg.audio"""
