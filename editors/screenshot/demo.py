import math


def distance(p, q):
    """Euclidean distance between two points."""
    dx = q[0] - p[0]
    dy = q[1] - p[1]
    return math.sqrt(dx * dx + dy * dy)


def closest(points, target):
    """The point of points nearest to target."""
