"""Execution: order commands in, broker calls out; broker reports in, order events out."""
