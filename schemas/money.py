"""Amounts of money on the wire: a decimal (never a float) with an ISO 4217 currency.

Which codes exist and how many minor-unit digits each has (JPY 0, USD 2, KWD 3) come from
Babel's copy of the CLDR/ISO 4217 data, so no table is kept here.
"""

from __future__ import annotations

from decimal import Decimal

from babel.numbers import get_currency_precision, is_currency


def check_amount(amount: Decimal, currency: str) -> str | None:
    """What is wrong with this amount in this currency (None: nothing)."""
    if not is_currency(currency):
        return f"currency: {currency!r} is not an ISO 4217 currency code (e.g. JPY, USD, EUR)"
    digits = get_currency_precision(currency)
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > digits:
        return f"amount: {amount} has more decimals than {currency} has minor units ({digits})"
    return None


def minor_units(amount: Decimal, currency: str) -> int:
    """The amount in the currency's minor units (12.34 USD -> 1234; 5000 JPY -> 5000)."""
    return int(amount.scaleb(get_currency_precision(currency)))


def from_minor_units(minor: int, currency: str) -> Decimal:
    """The decimal amount of `minor` minor units (1234 USD -> 12.34)."""
    return Decimal(minor).scaleb(-get_currency_precision(currency))
