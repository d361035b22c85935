"""The prediction record: every answered prediction in a database, the outcomes reported for it, and the
live quality and input drift computed from them. No patient identifier is taken or stored.

tables.py (the tables and their migrations, run by etl/db), ids.py (prediction ids), pending.py (answers on
their way to the database), store.py (SQL), writer.py (the async queue and its thread), live.py (live
figures), service.py (``PredictionRecords``: all of it for one service process).
"""
