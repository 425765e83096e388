"""Signed webhook callbacks: signing and verification (light), SSRF guard, Celery delivery.

Receivers need only `verify`:  payload = qinfer.callbacks.verify(secret, headers, body)
"""
from qinfer.signing import WebhookVerificationError, generate_secret, sign, verify
from qinfer.ssrf import CallbackURLRefused, check_callback_url

__all__ = ["verify", "sign", "generate_secret", "WebhookVerificationError",
           "check_callback_url", "CallbackURLRefused"]
