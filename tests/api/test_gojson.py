from appliance.api.gojson import go_encode, go_marshal


def test_matches_go_encoding_rules():
    assert go_marshal({"b": 1, "a": [1.0, 0.5, True, None]}) == b'{"a":[1,0.5,true,null],"b":1}'
    assert go_marshal({"stop": ["<|im_end|>", "a&b"]}) == b'{"stop":["\\u003c|im_end|\\u003e","a\\u0026b"]}'
    assert go_marshal("é\u2028") == '"é\\u2028"'.encode()
    assert go_marshal(1e-7) == b"1e-07"
    assert go_encode({}) == b"{}\n"


def test_struct_order_is_kept_when_asked():
    assert go_marshal({"z": 1, "a": 2}, sort_keys=False) == b'{"z":1,"a":2}'
