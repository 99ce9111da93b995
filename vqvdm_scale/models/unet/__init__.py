"""models/unet"""
