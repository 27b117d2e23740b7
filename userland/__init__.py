"""userland"""
