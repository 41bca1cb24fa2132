"""The syncache test harness: real servers, a backend matrix, real processes.

- :mod:`tests.harness.servers` starts redis-server and memcached on free
  loopback ports and creates a throwaway PostgreSQL database.
- :mod:`tests.harness.backends` turns a backend name into a Django ``CACHES``
  configuration, applies it for one test, and routes the database caches.
- :mod:`tests.harness.workers` runs a function in spawned Python processes
  that each set Django up with the parent's settings.

This package module imports nothing on purpose: spawned workers import
:mod:`tests.harness.workers` (and Django imports the router from
:mod:`tests.harness.backends`), and every import here would be paid again in
each worker.
"""
