from appliance.api.gojson import go_encode, go_marshal


def test_matches_go_encoding_rules():
    assert go_marshal({"b": 1, "a": [1.0, 0.5, True, None]}) == b'{"a":[1,0.5,true,null],"b":1}'
    assert go_marshal({"stop": ["<|im_end|>", "a&b"]}) == b'{"stop":["\\u003c|im_end|\\u003e","a\\u0026b"]}'
    assert go_marshal("é\u2028") == '"é\\u2028"'.encode()
    assert go_encode({}) == b"{}\n"


def test_floats_as_go_writes_them():
    """encoding/json: shortest round-trip digits, plain notation for 1e-6 <= |x| < 1e21, else an
    exponent whose "e-07" is shortened to "e-7" (encode.go's floatEncoder)."""
    expected = {0.1: "0.1", 0.95: "0.95", 1 / 3: "0.3333333333333333", 3.0: "3", 100.0: "100",
                1e20: "100000000000000000000", 123456789.5: "123456789.5", 0.00001: "0.00001",
                0.000001: "0.000001", 1e-7: "1e-7", -1e-7: "-1e-7", 1.5e-10: "1.5e-10", 5e-324: "5e-324",
                1e21: "1e+21", 2.5e21: "2.5e+21", 1e100: "1e+100", 0.0: "0"}
    for value, text in expected.items():
        assert go_marshal(value) == text.encode(), value
    assert go_marshal(-0.0) == b"-0"


def test_struct_order_is_kept_when_asked():
    assert go_marshal({"z": 1, "a": 2}, sort_keys=False) == b'{"z":1,"a":2}'
