"""Exchange with EHR partners: outbox and worker, SMART Backend Services, subscriptions."""
