-- hash_batch.lua (included, not a script): read, write and delete many fields of one hash in a few
-- commands, in slices of 1000 so no call exceeds Lua's unpack limit.
local function hmget_all(key, fields)
  local values = {}
  for i = 1, #fields, 1000 do
    local part = redis.call("HMGET", key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #part do
      values[i + j - 1] = part[j]
    end
  end
  return values
end

-- The same values by field: field -> value, or false when it has none.
local function hmget_map(key, fields)
  local values, by_field = hmget_all(key, fields), {}
  for i = 1, #fields do
    by_field[fields[i]] = values[i]
  end
  return by_field
end

local function hset_all(key, pairs)
  for i = 1, #pairs, 1000 do
    redis.call("HSET", key, unpack(pairs, i, math.min(i + 999, #pairs)))
  end
end

local function hdel_all(key, fields)
  for i = 1, #fields, 1000 do
    redis.call("HDEL", key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

-- A whole Lua number as an integer string (tostring would print 1e+15).
local function int(x)
  return string.format("%.0f", x)
end
