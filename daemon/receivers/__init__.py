"""Webhook receivers: authenticate, bound, validate, store one event, then answer 202.

Bad input gets a JSON 4xx naming the field and is never stored.
"""
