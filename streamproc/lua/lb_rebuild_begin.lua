-- lb_rebuild_begin.lua: start a leaderboard rebuild. In one step: refuse if one runs, empty the
-- staging boards, set the marker (from now on the snapshot stage registers no file, and an
-- earlier version's commits add their completions to the staging boards too), and return what
-- the rebuild must add up: the manifest's files, plus the facts-stream entries not yet acked
-- (pending: ids up to the group's last-delivered id; never delivered: after it, up to the
-- stream's last id), of which it counts the completions an earlier version had already put on
-- the live boards. Nothing acks them while the marker stands.
-- KEYS[1] marker  KEYS[2] staging currencies set  KEYS[3] facts stream  KEYS[4] manifest hash
-- ARGV[1] token  ARGV[2] marker TTL (ms)  ARGV[3] staging key prefix  ARGV[4] facts group
-- ARGV[5..] board names (keys.BOARDS)
-- Returns {"busy"} or {"ok", last-delivered id, last stream id, file names...}.
if redis.call("EXISTS", KEYS[1]) == 1 then
  return { "busy" }
end
for _, cur in ipairs(redis.call("SMEMBERS", KEYS[2])) do
  for b = 5, #ARGV do
    redis.call("UNLINK", ARGV[3] .. cur .. ":" .. ARGV[b])
  end
end
redis.call("DEL", KEYS[2])
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
local delivered, top = "0-0", "0-0"
if redis.call("EXISTS", KEYS[3]) == 1 then
  for _, group in ipairs(redis.call("XINFO", "GROUPS", KEYS[3])) do
    local fields = {}
    for i = 1, #group, 2 do
      fields[group[i]] = group[i + 1]
    end
    if fields["name"] == ARGV[4] then
      delivered = fields["last-delivered-id"]
    end
  end
  local last = redis.call("XREVRANGE", KEYS[3], "+", "-", "COUNT", 1)
  if #last > 0 then
    top = last[1][1]
  end
end
local out = { "ok", delivered, top }
for _, name in ipairs(redis.call("HKEYS", KEYS[4])) do
  out[#out + 1] = name
end
return out
