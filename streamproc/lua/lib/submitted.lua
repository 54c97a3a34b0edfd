-- submitted.lua (included, not a script): how long an order has been in the workflow, for the
-- end-to-end latency metric of the process that commits its terminal state.
-- The clock starts at field c (ingest) for a first attempt, and at the last pending@ step of the
-- history for an order re-submitted by `ingest --force` (a later attempt): `+<ms after c>`, or
-- absolute ms in a history written before lib/order.lua made steps relative. -1 when unknown.
local function elapsed_ms(now, created, history, attempt)
  local since = tonumber(created)
  if attempt ~= "1" and history then
    local relative, at = string.match(history, ".*pending@(%+?)(%-?%d+)")
    if at and relative == "+" then
      since = since and since + tonumber(at)
    elseif at then
      since = tonumber(at)
    end
  end
  if not since then
    return -1
  end
  return now - since
end
