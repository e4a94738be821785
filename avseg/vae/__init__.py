"""avseg.vae"""
