"""_uplink"""
