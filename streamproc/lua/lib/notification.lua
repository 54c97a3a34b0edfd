-- notification.lua (included, not a script): read the parts of a notification record the scripts
-- need, and name its index sets. A record is the text `status|customer|…` (streamproc/
-- notifications.py), its id `<order>:<type>:<channel>`; status codes p, s, f.
local NOTE_STATUS = { p = "pending", s = "sent", f = "failed" }

local function note_status(record)
  return string.sub(record, 1, 1)
end

local function note_customer(record)
  return string.match(record, "^%a|(%d+)|")
end

-- The index set holding record `id` while its status is `code` (prefix .. type:channel:status).
local function note_index(prefix, id, code)
  local kind, channel = string.match(id, ":(%a+):(%a+)$")
  return prefix .. kind .. ":" .. channel .. ":" .. NOTE_STATUS[code]
end

-- Move record `id` from the index of status `from` to that of `to`, keeping its score.
local function note_move(prefix, id, from, to)
  local old = note_index(prefix, id, from)
  local score = redis.call("ZSCORE", old, id)
  if score then
    redis.call("ZREM", old, id)
    redis.call("ZADD", note_index(prefix, id, to), score, id)
  end
end

-- The lease's holder, expiry (ms), and for a first attempt (no record yet) the log offset read
-- before it (-1: none, or email) and its attempt count, from `owner|expiry[|offset|attempts]`;
-- nil, 0, -1, 0 without a lease. A lease on an existing record carries only `owner|expiry`: the
-- record holds its offset and attempts.
local function note_lease(value)
  if not value then
    return nil, 0, -1, 0
  end
  local holder, expiry, offset, attempts = string.match(value, "^(.-)|(%d+)|?(-?%d*)|?(%d*)$")
  return holder, tonumber(expiry), tonumber(offset) or -1, tonumber(attempts) or 1
end
