-- Whose shipment it is: the order's customer, so that a customer's token reads their own
-- shipments only. NULL for shipments scheduled before the column existed (only an admin or a
-- platform service sees those).
ALTER TABLE shipments ADD COLUMN customer_id TEXT;
