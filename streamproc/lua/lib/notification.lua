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

-- The lease's holder and expiry (ms) from `owner|expiry`, or nil.
local function note_lease(value)
  if not value then
    return nil, 0
  end
  local sep = string.find(value, "|", 1, true)
  return string.sub(value, 1, sep - 1), tonumber(string.sub(value, sep + 1))
end
