# cython: language_level=3
"""placeholder"""
def version():
    return 0
