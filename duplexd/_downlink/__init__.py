"""_downlink"""
