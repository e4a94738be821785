"""avseg.engine"""
