"""Operations: metrics, the audit trail and evidence, the snapshot and warm start, logs,
and the emergency controls."""
