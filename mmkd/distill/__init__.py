"""mmkd.distill"""
