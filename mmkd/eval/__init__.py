"""mmkd.eval"""
