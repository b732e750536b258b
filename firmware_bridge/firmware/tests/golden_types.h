/* Types of the generated golden_frames.h (see CMakeLists.txt). */
#ifndef GOLDEN_TYPES_H
#define GOLDEN_TYPES_H

typedef struct {
    const char *name; /* field name as in protocol.py */
    int index;        /* array element, -1 for a scalar field */
    double value;
} golden_field_t;

typedef struct {
    const char *name;
    int type_id;
    int seq;
    int ack;
    const char *wire_hex; /* complete wire bytes including the 0x00 delimiter */
    int num_fields;
    golden_field_t fields[16];
} golden_frame_t;

typedef struct {
    const char *name;
    const char *error;    /* "crc", "frame" or "oversize" */
    const char *wire_hex;
    int nack_error;       /* fw_error_t the MCU answers with (0: dropped silently) */
} golden_invalid_t;

#endif
