"""mmkd.extract"""
